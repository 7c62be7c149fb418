"""Synthetic tube networks and collagen fibre images with exact ground truth.

These generators exist to test :mod:`napari_exouptake.tubes` and
:mod:`napari_exouptake.collagen` against known answers. They are private
(underscore module) but stable enough for tests and benchmarks.

Angle convention (shared with :mod:`napari_exouptake.collagen`): degrees
counter-clockwise from the image x-axis (columns, pointing right) as seen on
screen with row 0 at the top, in ``[0, 180)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "FibreTruth",
    "NetworkTruth",
    "RealisticNetworkTruth",
    "synthetic_fibres",
    "synthetic_network",
    "synthetic_network_realistic",
]


@dataclass(frozen=True)
class NetworkTruth:
    """Ground truth of a :func:`synthetic_network` image.

    Attributes
    ----------
    nodes : (N, 2) float ndarray
        Node positions (y, x) in pixels, only nodes with degree >= 1.
    edges : (E, 2) int ndarray
        Node index pairs of the drawn edges (straight lines).
    degrees : (N,) int ndarray
        Degree of every node.
    n_junctions : int
        Nodes with degree >= 3.
    n_extremities : int
        Nodes with degree 1.
    n_meshes : int
        Bounded faces of the planar graph (regions fully enclosed by tubes).
    total_length_px : float
        Sum of Euclidean edge lengths, pixels.
    line_width_px : float
        Drawn tube width, pixels.
    """

    nodes: np.ndarray
    edges: np.ndarray
    degrees: np.ndarray
    n_junctions: int
    n_extremities: int
    n_meshes: int
    total_length_px: float
    line_width_px: float


@dataclass(frozen=True)
class FibreTruth:
    """Ground truth of a :func:`synthetic_fibres` image.

    Attributes
    ----------
    angles_deg : (n_fibres,) float ndarray
        Orientation of every drawn fibre, degrees CCW from the x-axis, in [0, 180).
    mean_angle_deg : float
        Axial circular mean of ``angles_deg`` (doubled-angle mean, halved).
    alignment : float
        Resultant length of the doubled angles (0 = isotropic, 1 = parallel);
        the sample value, comparable to CurveAlign's coefficient of alignment.
    kappa : float
        von Mises concentration used for the doubled angles.
    fibre_mask : (Y, X) bool ndarray
        Pixels within half a fibre width of a drawn fibre centre line.
    total_length_px : float
        Sum of drawn fibre lengths inside the image, pixels (approximate at borders).
    """

    angles_deg: np.ndarray
    mean_angle_deg: float
    alignment: float
    kappa: float
    fibre_mask: np.ndarray = field(repr=False)
    total_length_px: float = 0.0


def _draw_segments(
    shape: tuple[int, int], p0: np.ndarray, p1: np.ndarray, width_px: float
) -> np.ndarray:
    """Rasterise thick straight segments with round caps.

    Parameters
    ----------
    shape : (Y, X)
    p0, p1 : (K, 2) float ndarray
        Segment end points (y, x), pixels.
    width_px : float
        Full line width, pixels.

    Returns
    -------
    (Y, X) bool ndarray
    """
    dist = np.full(shape, np.inf)
    for a, b in zip(np.asarray(p0, float), np.asarray(p1, float), strict=True):
        near = _segment_distance(shape, a, b, width_px / 2 + 2)
        if near is not None:
            box, dseg, _ = near
            np.minimum(dist[box], dseg, out=dist[box])
    return dist <= width_px / 2


def _segment_distance(
    shape: tuple[int, int], a: np.ndarray, b: np.ndarray, r: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Distance of the pixels of the segment ``a``-``b``'s bounding box (grown by ``r``) to the
    segment, and each pixel's position along it (0 at ``a``, 1 at ``b``); None when the box
    lies outside the image."""
    y0 = max(int(np.floor(min(a[0], b[0]) - r)), 0)
    y1 = min(int(np.ceil(max(a[0], b[0]) + r)) + 1, shape[0])
    x0 = max(int(np.floor(min(a[1], b[1]) - r)), 0)
    x1 = min(int(np.ceil(max(a[1], b[1]) + r)) + 1, shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    py, px = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    py -= a[0]
    px -= a[1]
    d = b - a
    dd = float(d @ d)
    t = np.clip((py * d[0] + px * d[1]) / dd, 0, 1) if dd > 0 else np.zeros_like(py)
    return (slice(y0, y1), slice(x0, x1)), np.hypot(py - t * d[0], px - t * d[1]), t


def _degrade(
    img: np.ndarray,
    rng: np.random.Generator,
    noise_sigma: float,
    illumination: float,
    blur_sigma_px: float,
) -> np.ndarray:
    """Blur, multiply by a smooth illumination field and add Gaussian noise."""
    out = ndimage.gaussian_filter(img.astype(np.float64), blur_sigma_px) if blur_sigma_px else img
    if illumination:
        ny, nx = img.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        field_ = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.6 * max(ny, nx)) ** 2))
        field_ = (field_ - field_.min()) / max(np.ptp(field_), 1e-12)
        # illumination = fractional drop from the brightest to the dimmest corner,
        # plus an additive background gradient of the same relative size
        out = out * (1 - illumination * (1 - field_)) + 0.3 * illumination * field_
    if noise_sigma:
        out = out + rng.normal(0, noise_sigma, img.shape)
    return out


def synthetic_network(
    seed: int = 0,
    shape: tuple[int, int] = (400, 400),
    *,
    spacing_px: float = 70.0,
    jitter_px: float = 10.0,
    line_width_px: float = 5.0,
    drop_fraction: float = 0.25,
    diagonal_fraction: float = 0.3,
    noise_sigma: float = 0.0,
    illumination: float = 0.0,
    blur_sigma_px: float = 1.0,
    margin_px: float = 30.0,
) -> tuple[np.ndarray, NetworkTruth]:
    """Planar tube network of known topology (tube-formation assay stand-in).

    Nodes sit on a jittered square grid; edges join grid neighbours, plus a
    random non-crossing diagonal in some grid cells; a fraction of edges is then
    dropped, which leaves junctions (degree >= 3), pass-through nodes
    (degree 2), extremities (degree 1) and enclosed meshes. Edges are drawn as
    bright straight tubes of fixed width with round caps on a dark background.

    Parameters
    ----------
    seed : int
        Random seed.
    shape : (Y, X) tuple of int
        Image shape, pixels.
    spacing_px : float
        Grid spacing, pixels (sets edge length and mesh size).
    jitter_px : float
        Uniform node jitter (+/-), pixels.
    line_width_px : float
        Tube width, pixels.
    drop_fraction : float
        Fraction of grid edges removed at random.
    diagonal_fraction : float
        Fraction of grid cells that get one diagonal edge.
    noise_sigma : float
        Additive Gaussian noise sigma, in units of the tube intensity (1.0).
    illumination : float
        Strength of a smooth uneven illumination (0 = flat; 0.5 = the dimmest
        region gets half the brightest's tube intensity, plus an additive gradient).
    blur_sigma_px : float
        Optical blur, pixels.
    margin_px : float
        Minimum distance of grid nodes from the image border, pixels.

    Returns
    -------
    image : (Y, X) float64 ndarray
    truth : NetworkTruth
    """
    rng = np.random.default_rng(seed)
    ny = int((shape[0] - 2 * margin_px) // spacing_px) + 1
    nx = int((shape[1] - 2 * margin_px) // spacing_px) + 1
    if ny < 2 or nx < 2:
        raise ValueError(f"shape {shape} too small for spacing_px={spacing_px}")
    gy, gx = np.mgrid[0:ny, 0:nx]
    nodes = np.stack(
        [margin_px + gy.ravel() * spacing_px, margin_px + gx.ravel() * spacing_px], axis=1
    ).astype(float)
    nodes += rng.uniform(-jitter_px, jitter_px, nodes.shape)
    idx = np.arange(ny * nx).reshape(ny, nx)
    edges = [
        np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], 1),
        np.stack([idx[:-1, :].ravel(), idx[1:, :].ravel()], 1),
    ]
    cells = rng.random((ny - 1, nx - 1)) < diagonal_fraction
    flip = rng.random((ny - 1, nx - 1)) < 0.5
    a = np.where(flip, idx[:-1, :-1], idx[:-1, 1:])[cells]
    b = np.where(flip, idx[1:, 1:], idx[1:, :-1])[cells]
    edges.append(np.stack([a, b], 1))
    edges = np.concatenate(edges)
    edges = edges[rng.random(len(edges)) >= drop_fraction]

    deg = np.bincount(edges.ravel(), minlength=len(nodes))
    keep = deg > 0
    remap = np.cumsum(keep) - 1
    nodes, deg, edges = nodes[keep], deg[keep], remap[edges]

    n_comp = _n_components(len(nodes), edges)
    # Euler for planar graphs: V - E + F = 1 + C (F counts the outer face)
    n_meshes = len(edges) - len(nodes) + n_comp
    lengths = np.linalg.norm(nodes[edges[:, 0]] - nodes[edges[:, 1]], axis=1)
    mask = _draw_segments(shape, nodes[edges[:, 0]], nodes[edges[:, 1]], line_width_px)
    img = _degrade(mask.astype(float), rng, noise_sigma, illumination, blur_sigma_px)
    truth = NetworkTruth(
        nodes=nodes,
        edges=edges,
        degrees=deg,
        n_junctions=int((deg >= 3).sum()),
        n_extremities=int((deg == 1).sum()),
        n_meshes=int(n_meshes),
        total_length_px=float(lengths.sum()),
        line_width_px=float(line_width_px),
    )
    return img, truth


def _n_components(n_nodes: int, edges: np.ndarray) -> int:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    return int(connected_components(g, directed=False)[0])


def synthetic_fibres(
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    mean_angle_deg: float = 30.0,
    alignment: float = 4.0,
    n_fibres: int = 150,
    length: float = 60.0,
    *,
    width_px: float = 3.0,
    noise_sigma: float = 0.05,
    illumination: float = 0.0,
) -> tuple[np.ndarray, FibreTruth]:
    """Collagen-like image of straight fibres with a known angle distribution.

    Fibre orientations are drawn from an axial von Mises distribution:
    ``2 * theta ~ VonMises(2 * mean, kappa)``; centres are uniform over the image.

    Parameters
    ----------
    seed : int
        Random seed.
    shape : (Y, X) tuple of int
        Image shape, pixels.
    mean_angle_deg : float
        Mean fibre orientation, degrees CCW from the image x-axis (rows grow
        downwards, so an angle of 45 deg runs from bottom-left to top-right on screen).
    alignment : float
        von Mises concentration ``kappa`` >= 0 of the doubled angles (0 = isotropic,
        ~1 = weak, >= 10 = strongly aligned).
    n_fibres : int
        Number of fibres.
    length : float
        Fibre length, pixels.
    width_px : float
        Fibre width (FWHM-like), pixels.
    noise_sigma : float
        Additive Gaussian noise sigma relative to fibre intensity 1.
    illumination : float
        Uneven illumination strength, as in :func:`synthetic_network`.

    Returns
    -------
    image : (Y, X) float64 ndarray
    truth : FibreTruth
    """
    if alignment < 0:
        raise ValueError(f"alignment (von Mises kappa) must be >= 0, got {alignment}")
    rng = np.random.default_rng(seed)
    mu2 = np.deg2rad(2 * mean_angle_deg)
    two_theta = (
        rng.vonmises(mu2, alignment, n_fibres)
        if alignment > 0
        else rng.uniform(-np.pi, np.pi, n_fibres)
    )
    theta = (two_theta / 2) % np.pi
    centres = rng.uniform([0, 0], shape, (n_fibres, 2))
    # direction in (row, col): CCW from x with rows pointing down
    d = np.stack([-np.sin(theta), np.cos(theta)], 1) * (length / 2)
    p0, p1 = centres - d, centres + d
    mask = _draw_segments(shape, p0, p1, width_px)
    amp = rng.uniform(0.6, 1.0, n_fibres)
    # per-fibre brightness: draw each fibre separately only via max-composition of masks
    img = np.zeros(shape)
    for k in range(n_fibres):
        mk = _draw_segments(shape, p0[k : k + 1], p1[k : k + 1], width_px)
        np.maximum(img, mk * amp[k], out=img)
    img = _degrade(img, rng, noise_sigma, illumination, blur_sigma_px=width_px / 3)
    z = np.exp(2j * theta).mean()
    truth = FibreTruth(
        angles_deg=np.rad2deg(theta),
        mean_angle_deg=float(np.rad2deg(np.angle(z)) / 2 % 180),
        alignment=float(abs(z)),
        kappa=float(alignment),
        fibre_mask=mask,
        total_length_px=float(n_fibres * length),
    )
    return img, truth


@dataclass(frozen=True)
class RealisticNetworkTruth(NetworkTruth):
    """Ground truth of a :func:`synthetic_network_realistic` image.

    Adds to :class:`NetworkTruth`:

    Attributes
    ----------
    edge_widths_px : (E,) float ndarray
        Drawn width of every edge, pixels.
    edge_brightness : (E, 2) float ndarray
        Tube brightness at both ends of every edge (linear in between), before illumination.
    thin_links : (E,) bool ndarray
        Edges drawn as dim thin links (width <= 3 px, brightness <= 0.35).
    clumps : (K, 3) float ndarray
        Round cell clumps (y, x, radius), pixels; they lie apart from every tube.
    tube_mask : (Y, X) bool ndarray
        Drawn tube pixels (clumps excluded).
    """

    edge_widths_px: np.ndarray = field(default=None, repr=False)
    edge_brightness: np.ndarray = field(default=None, repr=False)
    thin_links: np.ndarray = field(default=None, repr=False)
    clumps: np.ndarray = field(default=None, repr=False)
    tube_mask: np.ndarray = field(default=None, repr=False)


def _draw_graded_segments(
    shape: tuple[int, int],
    p0: np.ndarray,
    p1: np.ndarray,
    widths: np.ndarray,
    a0: np.ndarray,
    a1: np.ndarray,
) -> np.ndarray:
    """Max-composite of thick segments whose brightness runs linearly from ``a0`` to ``a1``."""
    out = np.zeros(shape)
    for a, b, w, v0, v1 in zip(p0, p1, widths, a0, a1, strict=True):  # loop over edges
        near = _segment_distance(shape, np.asarray(a, float), np.asarray(b, float), w / 2 + 2)
        if near is None:
            continue
        box, dseg, t = near
        val = np.where(dseg <= w / 2, v0 + (v1 - v0) * t, 0.0)
        np.maximum(out[box], val, out=out[box])
    return out


def synthetic_network_realistic(
    seed: int = 0,
    shape: tuple[int, int] = (512, 512),
    *,
    polarity: str = "bright",
    spacing_px: float = 80.0,
    jitter_px: float = 12.0,
    width_range_px: tuple[float, float] = (4.0, 12.0),
    thin_link_fraction: float = 0.3,
    thin_width_range_px: tuple[float, float] = (2.0, 3.0),
    brightness_range: tuple[float, float] = (0.2, 1.0),
    n_clumps: int = 5,
    clump_radius_px: tuple[float, float] = (12.0, 18.0),
    illumination: float = 0.5,
    photons: float | None = None,
    background: float = 0.1,
    dark_contrast: float = 0.45,
    drop_fraction: float = 0.2,
    diagonal_fraction: float = 0.3,
    blur_sigma_px: float = 1.0,
    margin_px: float = 30.0,
) -> tuple[np.ndarray, RealisticNetworkTruth]:
    """Tube network as real wells look: uneven tubes, dim thin links, clumps, Poisson noise.

    The topology is that of :func:`synthetic_network` (jittered grid, diagonals, dropped
    edges). Each edge gets its own width: cords ``width_range_px``; a fraction
    ``thin_link_fraction`` of edges are dim thin links (``thin_width_range_px`` wide, in the
    lowest third of ``brightness_range``). Brightness runs linearly along every edge between two
    values drawn from ``brightness_range`` (0.2-1.0 = 5x). Round cell clumps (bright discs with a
    cell-sized texture) are placed inside meshes, clear of the tubes. A smooth illumination
    field multiplies everything (``illumination`` = fractional drop from the brightest to the
    dimmest corner) and Poisson noise is drawn with ``photons`` counts at brightness 1.

    Parameters
    ----------
    seed : int
    shape : (Y, X)
    polarity : {"bright", "dark"}
        "bright": fluorescent tubes on a dark background (``background`` level);
        "dark": dark tubes on a bright background (brightfield/phase contrast): the background
        is 1 and tubes absorb up to ``dark_contrast`` of it (clumps absorb more).
    spacing_px, jitter_px, drop_fraction, diagonal_fraction, blur_sigma_px, margin_px
        As in :func:`synthetic_network`.
    width_range_px, thin_link_fraction, thin_width_range_px, brightness_range
        Tube widths (pixels) and relative brightness, see above.
    n_clumps : int
        Round clumps to place (fewer when there is no room).
    clump_radius_px : (float, float)
        Clump radius range, pixels.
    illumination : float
        0 = flat; 0.5 = the dimmest corner gets half the light of the brightest spot.
    photons : float, optional
        Expected photon count at intensity 1 (Poisson noise); 0 = no noise. Default 400 for
        "bright" (a brightness-1 tube; noise 5 % there, 16 % on the background) and 4000 for
        "dark" (the bright background of a brightfield image: noise 1.6 %). At 400 photons a
        dark-on-bright dim link (9 % dip) sits at 1.8 noise SDs per pixel and is not recovered.
    background : float
        Fluorescent background level relative to the brightest tube ("bright" only).
    dark_contrast : float
        Fraction of light a brightness-1 tube absorbs ("dark" only).

    Returns
    -------
    image : (Y, X) float64 ndarray
    truth : RealisticNetworkTruth
    """
    if polarity not in ("bright", "dark"):
        raise ValueError(f"polarity must be 'bright' or 'dark', got {polarity!r}")
    rng = np.random.default_rng(seed)
    # topology from the clean generator (drawing discarded)
    _, topo = synthetic_network(
        seed,
        shape,
        spacing_px=spacing_px,
        jitter_px=jitter_px,
        drop_fraction=drop_fraction,
        diagonal_fraction=diagonal_fraction,
        margin_px=margin_px,
        line_width_px=1.0,
        blur_sigma_px=0.0,
    )
    nodes, edges = topo.nodes, topo.edges
    n_e = len(edges)
    thin = rng.random(n_e) < thin_link_fraction
    widths = np.where(
        thin, rng.uniform(*thin_width_range_px, n_e), rng.uniform(*width_range_px, n_e)
    )
    lo, hi = brightness_range
    thin_hi = lo + (hi - lo) / 3
    b = np.where(thin[:, None], rng.uniform(lo, thin_hi, (n_e, 2)), rng.uniform(lo, hi, (n_e, 2)))
    p0, p1 = nodes[edges[:, 0]], nodes[edges[:, 1]]
    signal = _draw_graded_segments(shape, p0, p1, widths, b[:, 0], b[:, 1])
    tube_mask = signal > 0
    # clumps: inside meshes, at least 8 px clear of any tube
    clear = ndimage.distance_transform_edt(~tube_mask)
    clumps = []
    yy, xx = np.indices(shape, dtype=np.float64)
    clump_sig = np.zeros(shape)
    for _ in range(200):  # rejection sampling of clump centres
        if len(clumps) >= n_clumps:
            break
        r = rng.uniform(*clump_radius_px)
        cy, cx = rng.uniform(r + 5, shape[0] - r - 5), rng.uniform(r + 5, shape[1] - r - 5)
        if clear[int(cy), int(cx)] < r + 8:
            continue
        if any(np.hypot(cy - c[0], cx - c[1]) < r + c[2] + 8 for c in clumps):
            continue
        clumps.append((cy, cx, r))
        d = np.hypot(yy - cy, xx - cx)
        disc = np.clip(r + 0.5 - d, 0, 1)
        texture = 0.75 + 0.25 * np.cos(d / 2.5) * np.cos((xx - cx) / 3.0)
        clump_sig = np.maximum(clump_sig, disc * rng.uniform(0.8, 1.2) * texture)
    signal = np.maximum(signal, clump_sig)
    if blur_sigma_px:
        signal = ndimage.gaussian_filter(signal, blur_sigma_px)
    ny, nx = shape
    cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
    field_ = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.6 * max(ny, nx)) ** 2))
    field_ = (field_ - field_.min()) / max(np.ptp(field_), 1e-12)
    light = 1.0 - illumination * (1.0 - field_)
    if polarity == "bright":
        img = light * (background + signal)
    else:
        img = light * (1.0 - dark_contrast * np.minimum(signal, 1.6))
    if photons is None:
        photons = 400.0 if polarity == "bright" else 4000.0
    if photons:
        img = rng.poisson(np.clip(img, 0, None) * photons) / photons
    lengths = np.linalg.norm(p0 - p1, axis=1)
    truth = RealisticNetworkTruth(
        nodes=nodes,
        edges=edges,
        degrees=topo.degrees,
        n_junctions=topo.n_junctions,
        n_extremities=topo.n_extremities,
        n_meshes=topo.n_meshes,
        total_length_px=float(lengths.sum()),
        line_width_px=float(np.average(widths, weights=lengths)),
        edge_widths_px=widths,
        edge_brightness=b,
        thin_links=thin,
        clumps=np.asarray(clumps, dtype=np.float64).reshape(-1, 3),
        tube_mask=tube_mask,
    )
    return img.astype(np.float64), truth
