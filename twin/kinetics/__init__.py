"""Culture kinetics: equinox Modules, one file per family, each parameter with unit and range."""

from .base import AbstractGrowth, AbstractKinetics, AbstractProduction, Broth, Rates, parameter
from .co2 import CarbonDioxide
from .cardinal import CardinalPH, CardinalTemperature, ProductionTemperature, TemperatureIndependent
from .culture import AbstractCarbonBalance, CultureKinetics, PirtCarbon, UptakeLimitedCarbon
from .growth import ContoisGrowth, MonodGrowth
from .oxygen import OxygenDemand, OxygenLimitation
from .production import LuedekingPiret, ProductHydrolysis
from .uptake import OilUptake, PrecursorUptake, SugarUptake

__all__ = [
    "AbstractGrowth", "AbstractKinetics", "AbstractProduction", "Broth", "Rates", "parameter",
    "CardinalPH", "CardinalTemperature", "CarbonDioxide", "CultureKinetics", "AbstractCarbonBalance", "PirtCarbon",
    "UptakeLimitedCarbon", "ContoisGrowth", "MonodGrowth",
    "OxygenDemand", "OxygenLimitation", "LuedekingPiret", "ProductHydrolysis", "OilUptake",
    "PrecursorUptake", "SugarUptake", "ProductionTemperature", "TemperatureIndependent",
]
