"""Detection, localization and Agatston scoring of coronary artery calcium in chest CT."""

__version__ = "0.1.0"
