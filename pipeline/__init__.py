"""trackflow: particle movies from the camera to a publication-ready report.

The package is organised one module per stage (``acquire``, ``locate``,
``refine``, ``link``, ``segment``, ``reassign``, ``size``, ``report``);
stages meet only through the files and contracts in :mod:`pipeline.io`.
"""

__version__ = "0.1.0"
