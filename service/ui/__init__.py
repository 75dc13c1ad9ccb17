"""The browser side of deepserve: the try-it page at `/` and `/ui`, and /docs served without a CDN."""
