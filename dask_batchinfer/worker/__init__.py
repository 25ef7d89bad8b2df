"""What lives in a worker process: the model cache, packed user code, process facts."""
