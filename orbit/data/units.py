"""Source units -> store units, through UDUNITS (cf-units), so every spelling UDUNITS knows works.

``degK``, ``degC``, ``Kelvin``, ``kg m**-2 s**-1``, ``mm/day``, ``g kg-1``, ``%``, ``knots`` ... are
parsed and converted by UDUNITS rather than matched against a hand-written list. On top of plain
unit conversion, two quantities are accepted in another physical form, each with its one factor:

- precipitation as a rate (``kg m-2 s-1``, ``mm/day``...) becomes the amount over the store's 6 h
  (x 21600 s); 1 kg m-2 of water is 1 mm;
- geopotential given as geopotential height (``m``) becomes m2 s-2 (x g), and orography given as
  surface geopotential (``m2 s-2``) becomes m (/ g).

Conversions are affine (``scale * x + offset``: degC -> K has an offset), applied lazily.
"""
from __future__ import annotations

import cf_units

GRAVITY = 9.80665  # m s-2, WMO standard gravity: geopotential = g * geopotential height
SECONDS_PER_6H = 6 * 3600

# what -> ((reference unit, factor from the reference into the store unit), ...)
CONVERSIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "K": (("K", 1.0),),
    "m s-1": (("m s-1", 1.0),),
    "mm": (("mm", 1.0), ("kg m-2", 1.0), ("mm s-1", SECONDS_PER_6H), ("kg m-2 s-1", SECONDS_PER_6H)),
    "m2 s-2": (("m2 s-2", 1.0), ("m", GRAVITY)),
    "kg kg-1": (("1", 1.0),),
    "orography": (("m", 1.0), ("m2 s-2", 1.0 / GRAVITY)),
    "land_sea_mask": (("1", 1.0),),
}
SPELLINGS = {"(0 - 1)": "1", "0-1": "1"}  # ERA5's land-sea mask units, which UDUNITS cannot parse


def affine(target: str, units: str | None, what: str) -> tuple[float, float]:
    """``(scale, offset)`` bringing values in ``units`` into the store unit ``target`` (a key of
    :data:`CONVERSIONS`). ValueError naming the units and what would be accepted otherwise."""
    accepted = " or ".join(f"'{ref}'" for ref, _ in CONVERSIONS[target])
    if units is None or not str(units).strip():
        raise ValueError(f"{what} has no 'units' attribute; ORBIT needs units convertible to {accepted} "
                         f"(set the attribute on the input file)")
    text = SPELLINGS.get(str(units).strip(), str(units))
    try:
        unit = cf_units.Unit(text)
    except ValueError as err:
        raise ValueError(f"{what} has units {units!r}, which UDUNITS cannot parse ({err}); "
                         f"expected units convertible to {accepted}") from None
    for reference, factor in CONVERSIONS[target]:
        if unit.is_convertible(reference):
            offset = float(unit.convert(0.0, reference))
            scale = float(unit.convert(1.0, reference)) - offset
            return scale * factor, offset * factor
    raise ValueError(f"{what} has units {units!r}, which ORBIT cannot convert to the store's {target!r}: "
                     f"expected units convertible to {accepted}")
