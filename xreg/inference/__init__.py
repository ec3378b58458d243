"""Inference: preprocessing, the runtimes (ONNX Runtime or PyTorch), prediction, export.

Code that asks for predictions (:func:`xreg.inference.predict.predict_files`,
:func:`xreg.inference.pairs.predict_pairs`) takes a
:class:`~xreg.inference.runtime.Model` and never learns which runtime
answers; :func:`~xreg.inference.runtime.load_model` picks one. Nothing here
imports PyTorch unless the torch runtime is chosen.
"""
