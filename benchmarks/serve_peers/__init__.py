"""The servers ``benchmarks/serve.py`` measures side by side, and what it takes to run them.

Peer server files (``fastapi_minimal.py``, ``mlserver_model.py``, ``kserve_server.py``, ``pytriton_server.py``
and the ``ort_session.py`` they share) run in their peers' own venvs and import nothing from here; the
harness modules (``servers.py``, ``venvs.py``, ``wrk.py``, ``report.py``) run in the project's venv.
"""
