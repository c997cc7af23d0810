"""horde-scanner: keeps CSAM out of fediverse image storage, without a GPU."""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/horde-scanner/horde-scanner"
