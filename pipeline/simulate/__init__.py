"""Simulators: synthetic movies with ground truth for tests and benchmarks.

:class:`NTASimulator` is a simulated nanoparticle-tracking camera (Brownian
spheres sized by Stokes–Einstein, motion blur, Gaussian PSF, camera noise,
drift and flow fields, finite depth of field, 2D or 3D);
:func:`simulate_movie` returns a whole movie with its truth and metadata.
:func:`simulate_objects` simulates extended objects (ellipsoids, blobs)
that move, rotate, deform, appear and leave, with ground-truth labels.
"""

from .nta import NTASimulator, ShearFlow, VortexFlow, simulate_movie
from .objects import simulate_objects
from .render import camera_counts, render_gaussian_spots

__all__ = [
    "NTASimulator",
    "simulate_movie",
    "simulate_objects",
    "VortexFlow",
    "ShearFlow",
    "render_gaussian_spots",
    "camera_counts",
]
