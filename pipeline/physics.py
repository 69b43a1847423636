"""Physical constants and relations shared by the simulator and the sizing stage.

Units are SI unless a name says otherwise (``_um``, ``_nm``, ``_um2_s``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BOLTZMANN",
    "water_viscosity",
    "stokes_einstein_D",
    "stokes_einstein_diameter",
]

BOLTZMANN = 1.380649e-23  # J/K, exact (SI 2019)


def water_viscosity(temperature_K: float | np.ndarray) -> float | np.ndarray:
    """Dynamic viscosity of water, in Pa·s, from the Vogel equation.

    η(T) = 2.414e-5 · 10^(247.8 / (T − 140)), good to about 1 % over 0–100 °C
    (0.890 mPa·s at 25 °C).

    Parameters
    ----------
    temperature_K : float or array
        Temperature in kelvin; must lie in 273.15–373.15 K.

    References
    ----------
    Al-Shemmeri, T. (2012), *Engineering Fluid Mechanics*, Vogel-type fit;
    see also the CRC Handbook tables of water viscosity.
    """
    T = np.asarray(temperature_K, dtype=float)
    if np.any(~np.isfinite(T)) or np.any(T < 273.15) or np.any(T > 373.15):
        raise ValueError(
            f"temperature_K must be between 273.15 and 373.15 K for the water formula, got {temperature_K}"
        )
    eta = 2.414e-5 * 10.0 ** (247.8 / (T - 140.0))
    return float(eta) if eta.ndim == 0 else eta


def stokes_einstein_D(diameter_nm, temperature_K: float, viscosity_Pa_s: float):
    """Diffusion coefficient in µm²/s of a sphere of hydrodynamic diameter
    ``diameter_nm``: D = k_B T / (3 π η d) (Einstein 1905)."""
    d_m = np.asarray(diameter_nm, dtype=float) * 1e-9
    D = BOLTZMANN * temperature_K / (3.0 * np.pi * viscosity_Pa_s * d_m) * 1e12
    return float(D) if np.ndim(D) == 0 else D


def stokes_einstein_diameter(D_um2_s, temperature_K: float, viscosity_Pa_s: float):
    """Hydrodynamic diameter in nm from a diffusion coefficient in µm²/s
    (the inverse of :func:`stokes_einstein_D`). Non-positive D gives NaN."""
    D = np.asarray(D_um2_s, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(
            D > 0, BOLTZMANN * temperature_K / (3.0 * np.pi * viscosity_Pa_s * D * 1e-12) * 1e9, np.nan
        )
    return float(d) if np.ndim(d) == 0 else d
