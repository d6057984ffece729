"""Entry point for Phusion Passenger (cPanel "Setup Python App") and `flask --app passenger_wsgi`."""

import os
import sys

# Passenger starts in the app root, but not every setup puts it on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from app import create_app  # noqa: E402

application = create_app()
