"""The paper's experiments (Dogra & Redman, NeurIPS 2020), run by ``koopt reproduce``.

- ``hnn``: the Hamiltonian-network solver of x' = p, p' = -x - x^3 (Sec. 4.1); defaults
  follow the paper: t1 = 35 000, window 10 000, T = 2 500, 25 seeds, Adadelta lr 1.0
  (Adam and Adagrad too); ``--windows early`` records the same lengths from step 0.
- ``mnist``: the 784-20-20-20-10 ReLU classifier, Adadelta lr 1.0, batch 64 (Sec. 4.2).
  Real MNIST from IDX files: t1 = 3 epochs (2 814 steps), window 1 epoch (938), 5 seeds.
  Without files, scikit-learn's 8x8 digits (64-20-20-20-10, 23 steps per epoch):
  t1 = 690 (30 epochs), window 460 (20 epochs), 25 seeds. Both sweep T over
  100, 250, 500, 938, 1 876 steps (938 = one MNIST epoch, the headline T).
- ``variants``: the Koopman fits compared on every seed (family + core options + stride).
- ``runner``: the shared record -> fit every variant once -> jump every horizon -> compare
  cycle with the baselines; ``tasks``: picklable task recipes for ``--jobs``.

Learning rates: Adadelta 1.0 (the PyTorch default, used by the seed and by the MNIST
reimplementation); Adam 8e-3 with betas (0.999, 0.9999) for the HNN (the original
Hamiltonian-network code), 1e-3 for the classifier; Adagrad 1e-2 (PyTorch default).
"""

from koopt.experiments.idx import DataError, IDXError, read_idx, write_idx

__all__ = ["DataError", "IDXError", "read_idx", "write_idx"]
