"""The storage engine: repositories, images, volumes, and the I/O that touches them."""
