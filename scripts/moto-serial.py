#!/usr/bin/env python3
"""moto's S3 server with one request at a time inside moto.

moto's in-memory backend is not thread-safe, and `moto_server` serves each connection on its
own thread: a ListObjects that iterates the bucket while another thread deletes a key fails
with KeyError and answers 500 (seen as distribution's `RequestFailure` at blob #330-690 of a
1000 x 4 KiB push with 16 clients). A lock around the backend call removes that race; Python's
GIL serialises moto's work anyway, so the lock costs little throughput.

    moto-serial.py -H 127.0.0.1 -p PORT
"""
import argparse
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def serialised(app):
    lock = threading.Lock()

    def call(environ, start_response):
        with lock:
            # Materialise the body inside the lock: moto may build it lazily from its state.
            return list(app(environ, start_response))

    return call


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serialised(app), threaded=True)


if __name__ == "__main__":
    main()
