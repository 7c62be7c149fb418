"""The band-pass (difference-of-Gaussians) filter, in punctum-amplitude units.

``G(s1) * I - G(s2) * I`` with ``s1`` 0.7 x the punctum's Gaussian sigma (a little sharper
than a matched filter, so that crowded puncta keep separate maxima) and ``s2`` a wider Gaussian
that follows diffuse autofluorescence and uneven illumination (a linear background gives
exactly 0). The output is divided by the filter's centre response to a unit-amplitude PSF, so
that a punctum of peak ``A`` above a smooth background gives ``A``: thresholds are in image
intensity units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..config import DEFAULT_RADIUS_PX
from ._geometry import check_image, per_axis

__all__ = ["BandPass", "band_pass", "filter_image"]

#: the smoothing sigma is this fraction of the PSF sigma: a little sharper than a matched filter
#: (1.0), so puncta 2-4 px apart keep separate maxima
_SHARPEN = 0.7
#: the background Gaussian's sigma is half the background radius, and at least this many
#: times the punctum's sigma (so that the band-pass keeps a punctum's flux)
_MIN_BG_RATIO = 1.5


@dataclass(frozen=True)
class BandPass:
    """Scales of the band-pass, per axis (px), and its gains."""

    radius: np.ndarray  #: punctum radius, sqrt(2) x the PSF sigma
    bg_radius: np.ndarray  #: local-background radius
    psf: np.ndarray  #: the PSF's Gaussian sigma
    s1: np.ndarray  #: smoothing sigma (_SHARPEN x psf)
    s2: np.ndarray  #: background sigma
    g1_gain: float  #: centre response of G(s1) to a unit-peak PSF
    dog_gain: float  #: centre response of G(s1) - G(s2) to a unit-peak PSF

    @classmethod
    def make(
        cls, ndim: int, radius_px: float | Sequence[float], background_radius_px: float | None
    ) -> BandPass:
        radius = per_axis(radius_px, ndim, "radius_px")
        if background_radius_px is None:
            bg_radius = 1.8 * radius
        else:
            bg_radius = per_axis(background_radius_px, ndim, "background_radius_px")
            # keep the anisotropy of radius_px when a single background radius is given
            if np.ndim(background_radius_px) == 0:
                bg_radius = float(background_radius_px) * radius / radius[-1]
        if np.any(bg_radius <= radius):
            raise ValueError(
                f"background_radius_px ({background_radius_px}) must be larger than radius_px "
                f"({radius_px})"
            )
        psf = radius / np.sqrt(2.0)
        s1 = _SHARPEN * psf
        s2 = np.maximum(bg_radius / 2.0, _MIN_BG_RATIO * s1)
        g1, dog = _gains(s1, s2, psf)
        return cls(radius, bg_radius, psf, s1, s2, g1, dog)

    def response(self, delta: np.ndarray) -> np.ndarray:
        """Band-pass response at offsets ``delta`` ``(..., ndim)`` px to a unit-peak punctum
        (the filter's positive centre and negative ring), in amplitude units."""
        d2 = np.asarray(delta, dtype=np.float64) ** 2
        out = np.zeros(d2.shape[:-1])
        for s, sign in ((self.s1, 1.0), (self.s2, -1.0)):
            var = self.psf**2 + s**2
            norm = np.prod(self.psf**2 / var) ** 0.5
            out += sign * norm * np.exp(-0.5 * (d2 / var).sum(axis=-1))
        return out / self.dog_gain

    def render(self, shape: tuple[int, ...], peaks: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """Band-passed image (float32) of unit-PSF puncta of peak ``heights`` at ``peaks``
        ``(N, ndim)`` int: the sum of their :meth:`response` (two Gaussian blurs of the point
        image: a Gaussian PSF convolved with a Gaussian is a Gaussian)."""
        canvas = np.zeros(shape, dtype=np.float32)
        if len(peaks):
            np.add.at(canvas, tuple(np.asarray(peaks).T), np.asarray(heights, np.float32))
        scale = float(np.prod(np.sqrt(2.0 * np.pi) * self.psf)) / self.dog_gain
        g2 = ndimage.gaussian_filter(canvas, np.sqrt(self.psf**2 + self.s2**2), mode="constant")
        canvas = ndimage.gaussian_filter(canvas, np.sqrt(self.psf**2 + self.s1**2), mode="constant")
        canvas -= g2
        del g2
        canvas *= np.float32(scale)
        return canvas

    @property
    def reach(self) -> float:
        """Distance (px) beyond which :meth:`response` is negligible."""
        return float(3.0 * self.s2.max() + self.s1.max())


def _gains(s1: np.ndarray, s2: np.ndarray, psf: np.ndarray) -> tuple[float, float]:
    """Centre response of ``G(s1)`` and of ``G(s1) - G(s2)`` to a unit-amplitude PSF
    (analytic: Gaussians convolve into Gaussians)."""
    g1 = float(np.prod(psf**2 / (psf**2 + s1**2)) ** 0.5)
    g2 = float(np.prod(psf**2 / (psf**2 + s2**2)) ** 0.5)
    return g1, g1 - g2


def band_pass(img: np.ndarray, bp: BandPass) -> tuple[np.ndarray, np.ndarray]:
    """Band-passed image (amplitude units) and the ``s1``-smoothed image, both float32."""
    smooth = ndimage.gaussian_filter(img, bp.s1, output=np.float32, mode="reflect")
    dog = ndimage.gaussian_filter(img, bp.s2, output=np.float32, mode="reflect")
    np.subtract(smooth, dog, out=dog)
    dog /= np.float32(bp.dog_gain)
    return dog, smooth


def filter_image(
    image: np.ndarray,
    *,
    radius_px: float | Sequence[float] = DEFAULT_RADIUS_PX,
    background_radius_px: float | None = None,
) -> np.ndarray:
    """Band-pass (difference-of-Gaussians) image in punctum-amplitude units.

    Parameters
    ----------
    image : (Y, X) or (Z, Y, X) ndarray
        Exosome channel.
    radius_px : float or sequence of float
        Punctum radius in pixels (``sqrt(2)`` x the PSF's Gaussian sigma), or one per axis.
    background_radius_px : float, optional
        Scale of the local background; default ``1.8 x radius_px``.

    Returns
    -------
    (Y, X) or (Z, Y, X) float32 ndarray
        A punctum of peak amplitude ``A`` above a smooth background responds with ``A``.
    """
    img = check_image(image)
    return band_pass(img, BandPass.make(img.ndim, radius_px, background_radius_px))[0]
