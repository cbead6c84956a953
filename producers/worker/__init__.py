"""The publishing worker process: ProcessPublisher (process.py) starts the child
(child.py, `python -m headwater.producers.worker.child`) and feeds it held training steps
through a shared-memory ring (ring.py) and framed messages on pipes (pipe.py), so the
projection, encoding, hashing and sending never hold the trainer's GIL.

Nothing is imported here: ring.py and pipe.py stay free of torch and the transports."""
