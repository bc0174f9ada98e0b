"""`mtl-serve RUN_DIR`: every head and the embeddings of a run behind an HTTP API that Text Embeddings Inference's
clients speak (FastAPI + uvicorn, dynamic batching, Prometheus metrics). See `mtl_st.serve.app` for the routes and
`python -m mtl_st.serve --help` for the options. Importing this package imports neither torch nor FastAPI."""
