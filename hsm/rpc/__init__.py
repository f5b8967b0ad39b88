"""XML-RPC: the server hsmd runs, the client hsm-cli and vdsm_shim use, and marshalling."""
