"""The verbs, one module per group, over the engine; no module here knows the transport.

hsmd serves these objects over XML-RPC and vdsm_shim calls the same objects
in-process, so both give the same answers.
"""
