"""mtl_st: the library around the multi-task sentence transformer.

The model itself (`MultiTaskConfig`, `MultiTaskModel`, the task specs, losses, encode engine and pipeline) lives in
the flat `*_mtl.py` files at the top of the project, because those files travel with every saved model. This package
holds everything else, by concern:

- `mtl_st.data`: reading task data (BEIR folders and ranking rows included), splits and labels, each task type's
  data side, batching;
- `mtl_st.training`: the helpers of `MultiTaskTrainer` and `train.py` (parameter groups, checks, run guard,
  embedding preservation, adapters, cross-validation, model set-up);
- `mtl_st.evaluation`: STS scoring, retrieval and reranking metrics, printed examples, training curves;
- `mtl_st.search`: `hyperparameter_search:` (its space, objectives and constraints, the Optuna study, the report);
- `mtl_st.onnx`: ONNX export and the torch-free runtime (`python -m mtl_st.onnx`);
- `mtl_st.inference`: what the pipeline, the server and the demo share (loading a backend, validated requests);
- `mtl_st.serve`: the HTTP server on Text Embeddings Inference's routes (`mtl-serve`);
- `mtl_st.demo`: the Gradio demo (`mtl-demo`, or mounted at `/demo` in the server);
- `mtl_st.checkpoints`, `mtl_st.interop`, `mtl_st.modelcard`, `mtl_st.errors`: offline checkpoints,
  sentence-transformers interop, model cards, the errors the command lines turn into exit codes.

Importing `mtl_st` imports nothing else: the model files reach into it lazily, and no module of it imports them
back on the way.
"""

__version__ = "0.2.0"
