"""Analytic toy model of a collider-detector barrel: tracker, thin solenoid, sampling calorimeter.

Pure functions, no tasklift and no optuna: importable in a job, in a test, or in a notebook.

Layout (ATLAS-like, inside out): a silicon tracker up to just below ``inner_radius_m``, a thin
superconducting solenoid at ``inner_radius_m`` (dead material in front of the calorimeter), then
a lead/plastic-scintillator sampling calorimeter of ``depth_x0`` radiation lengths.
The barrel half-length is ``HALF_LENGTH_PER_RADIUS * inner_radius_m`` (fixed |eta| coverage).

Five design parameters (name: range, sampled on a log scale?):

* ``depth_x0``           calorimeter depth in radiation lengths X0 (10 - 35, linear)
* ``sampling_fraction``  MIP sampling fraction of the calorimeter (0.02 - 0.5, log)
* ``cell_size_cm``       transverse calorimeter cell size (0.5 - 5 cm, log)
* ``inner_radius_m``     calorimeter inner radius = solenoid radius, sets the tracker lever arm
                         (0.8 - 2.5 m)
* ``field_t``            solenoid field (0.5 - 4 T)

Three objectives, all minimised:

1. ``energy_resolution_pct``: photon energy resolution sigma_E/E in %, the quadratic mean over
   E = 5, 20, 100 GeV of  a/sqrt(E) (+) b/E (+) c (+) leakage(E), where

   * a: sampling fluctuations, Amaldi/Wigmans 2.7 % * sqrt(d_active[mm] / f_samp), plus the
     upstream dead material (solenoid coil, whose thickness in X0 grows like B^2 R because the
     coil must hold the magnetic pressure) in quadrature;
   * b: electronics noise of a fixed-area cluster. Per-cell noise grows with the cell's
     capacitance (its area), the number of cells in the cluster falls like 1/area, so the cluster
     noise grows linearly with the cell size; it is divided by f_samp to express it in deposited
     energy;
   * c: a constant term (calibration, non-uniformity);
   * leakage: rear leakage of the longitudinal Gamma-function shower profile (PDG eq. 34.36 with
     b = 0.5, t_max = ln(E/E_c) + 0.5 for photons), fluctuations taken as large as the mean.

2. ``momentum_resolution_pct``: sigma_pT/pT in % at pT = 100 GeV: the Gluckstern
   measurement term sigma_x pT / (0.3 B L^2) sqrt(720/(N+4)) (+) the multiple-scattering term
   0.0136 sqrt(1.43 x/X0) / (0.3 B L), lever arm L = inner radius - gap.

3. ``cost_mchf``: cost in MCHF: silicon area, magnet (Green-St. Lorant scaling with stored energy),
   calorimeter absorber and active volume, and readout channels.

The numbers are plausible rather than calibrated to a real detector; what matters is that each
term has the right physical dependence, so the trade-offs are the real ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from scipy.special import gammaincc

# --- design space -------------------------------------------------------------------------------

# name -> (low, high, log scale)
PARAMETERS: dict[str, tuple[float, float, bool]] = {
    "depth_x0": (10.0, 35.0, False),
    "sampling_fraction": (0.02, 0.5, True),
    "cell_size_cm": (0.5, 5.0, True),
    "inner_radius_m": (0.8, 2.5, False),
    "field_t": (0.5, 4.0, False),
}

OBJECTIVES: tuple[str, ...] = ("energy_resolution_pct", "momentum_resolution_pct", "cost_mchf")

# Fixed reference point for the hypervolume (a design worse than this in any objective is useless).
REFERENCE_POINT: tuple[float, ...] = (10.0, 2.0, 200.0)

# --- materials (PDG) ----------------------------------------------------------------------------

PB_X0_CM = 0.56  # lead radiation length
PB_DEDX_MEV_CM = 12.73  # lead minimum-ionising dE/dx (1.122 MeV cm2/g * 11.35 g/cm3)
PB_CRITICAL_ENERGY_GEV = 7.43e-3  # lead critical energy
SCINT_X0_CM = 41.31  # polystyrene scintillator
SCINT_DEDX_MEV_CM = 2.05  # polystyrene minimum-ionising dE/dx (1.936 MeV cm2/g * 1.06 g/cm3)

# --- calorimeter --------------------------------------------------------------------------------

ACTIVE_LAYER_MM = 1.0  # active (scintillator) layer thickness d in the Amaldi formula
AMALDI_COEFF = 0.027  # sigma/E = 2.7 % sqrt(d[mm] / f_samp) / sqrt(E)
DEAD_MATERIAL_COEFF = 0.04  # stochastic-term contribution per X0 of upstream dead material
NOISE_GEV_PER_CM = 0.01  # cluster noise (visible-energy scale x f_samp) per cm of cell size
CONSTANT_TERM = 0.007  # calibration / non-uniformity
PROFILE_B = 0.5  # longitudinal-profile slope parameter b (PDG 34.36)
PHOTON_ENERGIES_GEV = (5.0, 20.0, 100.0)
LONGITUDINAL_SEGMENTS = 3  # read-out depth segments

# --- solenoid and tracker ----------------------------------------------------------------------

COIL_X0_PER_T2_M = 0.134  # coil thickness in X0 per T^2 m (ATLAS CS: 0.66 X0 at 2 T, 1.23 m)
OTHER_DEAD_X0 = 0.3  # cryostat, tracker services
HALF_LENGTH_PER_RADIUS = 2.0  # barrel half-length / inner radius (|eta| < ~1.4)
TRACKER_GAP_M = 0.15  # tracker outer radius = inner radius - gap
TRACKER_LAYERS = 10
HIT_RESOLUTION_M = 20e-6
TRACKER_X0 = 0.10  # total tracker material in X0
REFERENCE_PT_GEV = 100.0
MU0 = 4e-7 * math.pi

# --- cost (MCHF) --------------------------------------------------------------------------------

SILICON_MCHF_PER_M2 = 0.15
ABSORBER_MCHF_PER_M3 = 1.0
ACTIVE_MCHF_PER_M3 = 3.0
CHANNEL_MCHF = 30e-6  # 30 CHF per read-out channel
MAGNET_COEFF = 0.523  # Green & St. Lorant: cost [M$] = 0.523 * E_stored[MJ]^0.662
MAGNET_EXPONENT = 0.662


# --- sampling structure -------------------------------------------------------------------------


def active_thickness_fraction(sampling_fraction: float) -> float:
    """Fraction of the calorimeter's thickness that is scintillator, for a MIP sampling fraction.

    f_samp = t_s dEdx_s / (t_s dEdx_s + t_a dEdx_a)  =>  t_s / t_a = f/(1-f) * dEdx_a/dEdx_s.
    """
    f = sampling_fraction
    ratio = f / (1.0 - f) * PB_DEDX_MEV_CM / SCINT_DEDX_MEV_CM
    return ratio / (1.0 + ratio)


def effective_x0_cm(sampling_fraction: float) -> float:
    """Radiation length of the lead/scintillator stack (thickness-weighted 1/X0)."""
    w = active_thickness_fraction(sampling_fraction)
    return 1.0 / ((1.0 - w) / PB_X0_CM + w / SCINT_X0_CM)


def calorimeter_thickness_m(depth_x0: float, sampling_fraction: float) -> float:
    """Radial thickness of the calorimeter in metres."""
    return depth_x0 * effective_x0_cm(sampling_fraction) / 100.0


# --- objective 1: energy resolution -------------------------------------------------------------


def upstream_material_x0(inner_radius_m: float, field_t: float) -> float:
    """Dead material in front of the calorimeter: solenoid coil (~ B^2 R) plus services, in X0."""
    return COIL_X0_PER_T2_M * field_t**2 * inner_radius_m + OTHER_DEAD_X0


def stochastic_term(sampling_fraction: float, dead_x0: float) -> float:
    """Stochastic term a (sigma/E = a / sqrt(E[GeV])): sampling (+) upstream dead material."""
    sampling = AMALDI_COEFF * math.sqrt(ACTIVE_LAYER_MM / sampling_fraction)
    return math.hypot(sampling, DEAD_MATERIAL_COEFF * dead_x0)


def noise_term_gev(cell_size_cm: float, sampling_fraction: float) -> float:
    """Noise term b in GeV (sigma/E = b / E): linear in cell size, divided by f_samp."""
    return NOISE_GEV_PER_CM * cell_size_cm / sampling_fraction


def leakage_fraction(energy_gev: float, depth_x0: float) -> float:
    """Mean fraction of a photon shower leaking out of the back of ``depth_x0`` X0.

    Longitudinal profile dE/dt ~ t^(a-1) exp(-b t) (PDG eq. 34.36) with b = 0.5 and
    t_max = (a-1)/b = ln(E/E_c) + 0.5 for photons; leakage = upper regularised Gamma(a, b T).
    """
    t_max = math.log(energy_gev / PB_CRITICAL_ENERGY_GEV) + 0.5
    a = PROFILE_B * t_max + 1.0
    return float(gammaincc(a, PROFILE_B * depth_x0))


def relative_energy_resolution(energy_gev: float, design: Mapping[str, float]) -> float:
    """sigma_E / E (a fraction) for a photon of ``energy_gev``."""
    dead = upstream_material_x0(design["inner_radius_m"], design["field_t"])
    a = stochastic_term(design["sampling_fraction"], dead)
    b = noise_term_gev(design["cell_size_cm"], design["sampling_fraction"])
    leak = leakage_fraction(energy_gev, design["depth_x0"])
    return math.sqrt(a**2 / energy_gev + (b / energy_gev) ** 2 + CONSTANT_TERM**2 + leak**2)


def energy_resolution_pct(design: Mapping[str, float]) -> float:
    """Objective 1: quadratic mean of sigma_E/E over ``PHOTON_ENERGIES_GEV``, in %."""
    terms = [relative_energy_resolution(e, design) ** 2 for e in PHOTON_ENERGIES_GEV]
    return 100.0 * math.sqrt(sum(terms) / len(terms))


# --- objective 2: momentum resolution -----------------------------------------------------------


def lever_arm_m(inner_radius_m: float) -> float:
    """Radial lever arm of the tracker."""
    return inner_radius_m - TRACKER_GAP_M


def momentum_resolution_pct(design: Mapping[str, float], pt_gev: float = REFERENCE_PT_GEV) -> float:
    """Objective 2: sigma_pT/pT in % (Gluckstern measurement term (+) multiple scattering)."""
    b_field = design["field_t"]
    lever = lever_arm_m(design["inner_radius_m"])
    measurement = (
        HIT_RESOLUTION_M
        * pt_gev
        / (0.3 * b_field * lever**2)
        * math.sqrt(720.0 / (TRACKER_LAYERS + 4))
    )
    scattering = 0.0136 * math.sqrt(1.43 * TRACKER_X0) / (0.3 * b_field * lever)
    return 100.0 * math.hypot(measurement, scattering)


# --- objective 3: cost --------------------------------------------------------------------------


def cost_breakdown_mchf(design: Mapping[str, float]) -> dict[str, float]:
    """Cost of each sub-system in MCHF."""
    radius = design["inner_radius_m"]
    half_length = HALF_LENGTH_PER_RADIUS * radius
    f = design["sampling_fraction"]

    # Tracker: TRACKER_LAYERS cylinders, evenly spread in radius up to the tracker's outer radius.
    silicon_m2 = TRACKER_LAYERS * 2.0 * math.pi * (lever_arm_m(radius) / 2.0) * 2.0 * half_length

    # Solenoid: stored energy B^2 / (2 mu0) * volume.
    stored_mj = design["field_t"] ** 2 / (2.0 * MU0) * math.pi * radius**2 * 2.0 * half_length / 1e6

    # Calorimeter: a cylindrical shell.
    thickness = calorimeter_thickness_m(design["depth_x0"], f)
    volume_m3 = math.pi * ((radius + thickness) ** 2 - radius**2) * 2.0 * half_length
    w_active = active_thickness_fraction(f)
    front_cm2 = 2.0 * math.pi * radius * 2.0 * half_length * 1e4
    channels = LONGITUDINAL_SEGMENTS * front_cm2 / design["cell_size_cm"] ** 2

    return {
        "tracker": SILICON_MCHF_PER_M2 * silicon_m2,
        "magnet": MAGNET_COEFF * stored_mj**MAGNET_EXPONENT,
        "calorimeter": volume_m3
        * ((1.0 - w_active) * ABSORBER_MCHF_PER_M3 + w_active * ACTIVE_MCHF_PER_M3),
        "readout": CHANNEL_MCHF * channels,
    }


def cost_mchf(design: Mapping[str, float]) -> float:
    """Objective 3: total cost in MCHF."""
    return sum(cost_breakdown_mchf(design).values())


# --- all objectives -----------------------------------------------------------------------------


def objectives(design: Mapping[str, float]) -> list[float]:
    """The three objectives (all minimised), in ``OBJECTIVES`` order."""
    missing = set(PARAMETERS) - set(design)
    if missing:
        raise KeyError(f"design lacks parameters: {sorted(missing)}")
    for name, (low, high, _) in PARAMETERS.items():
        value = design[name]
        if not low <= value <= high:
            raise ValueError(f"{name}={value} outside [{low}, {high}]")
    return [energy_resolution_pct(design), momentum_resolution_pct(design), cost_mchf(design)]
