"""Runtimes turn a model file into something that predicts. Each is chosen by
name; ``resolve`` picks one from the config or from the model file's name."""
