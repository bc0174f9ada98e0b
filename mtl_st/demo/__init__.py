"""`mtl-demo RUN_DIR`: a Gradio app that shows every head of a run and its embeddings (`mtl_st.demo.app`), offline.
Importing this package imports nothing else; `mtl_st.demo.app` imports Gradio (with its analytics switched off)."""
