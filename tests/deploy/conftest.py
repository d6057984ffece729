"""Fixtures for the deployment tests: one Deployment (app user, Python 3.11 virtualenv) per session."""

from __future__ import annotations

import pytest

from .apache import Deployment, missing_tools


@pytest.fixture(scope="session")
def deployment(request, tmp_path_factory):
    """Build the app user and virtualenv once per session; fail when Apache/Passenger/Python 3.11 are missing."""
    missing = missing_tools()
    if missing:
        # make test installs them first: a missing one is a broken set-up to see, not a test to skip quietly.
        pytest.fail(f"needs Debian packages {' '.join(missing)} (run tests/helpers/install-system-deps.sh as root)")
    # pip's cache outlives the session in pytest's cache folder, so later sessions install from it quickly.
    cache = getattr(request.config, "cache", None)
    pip_cache = cache.mkdir("deploy-pip-cache") if cache is not None else tmp_path_factory.mktemp("pip-cache")
    built = Deployment(pip_cache)
    yield built
    built.remove()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the end of every deployed Site's Apache and Passenger logs to a failed test's report."""
    report = yield
    deployment = item.funcargs.get("deployment") if hasattr(item, "funcargs") else None
    if report.failed and deployment is not None:
        for site in deployment.sites:
            for name, text in (("Apache error log", site.error_log()), ("Passenger log", site.passenger_log())):
                report.sections.append((f"{site.home.name} {name} (tail)", text[-4000:]))
    return report
