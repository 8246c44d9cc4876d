"""How a trained model is frozen: torch -> ONNX bundle (see xtm.exporters.onnx_export)."""
