"""mmx: fine-tune vision-language models from one model definition on PyTorch or MindSpore.

The backend is fixed once per process (``MMX_BACKEND`` or ``--backend``); see :mod:`mmx.backend`.
"""

__version__ = "0.1.0"
