"""crawler: an image metadata crawler and catalogue.

The data's path, one module per stage: ``seeds`` -> ``frontier`` -> ``fetch`` -> ``extract``
-> ``store`` -> ``query``. ``engine`` runs the stages of a crawl together; ``catalogue`` opens
the database; ``cli`` is a thin layer over all of them.
"""

__version__ = "0.1.0"
