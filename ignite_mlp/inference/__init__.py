"""A trained run used: evaluated on its data, predicting files, exported to ONNX or TorchScript.
``predict`` and ``export`` load no Ignite engine and none of the training modules."""
