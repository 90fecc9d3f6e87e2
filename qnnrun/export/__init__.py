"""Exports of a trained run: the integer model (``format=int``) and an ONNX QDQ graph (``format=onnx``)."""
