"""Zhu et al. (IJCAI 2017), a unified CNN-RNN for visual emotion recognition: the library behind the notebooks."""

__version__ = "0.1.0"
