package onnxpb
