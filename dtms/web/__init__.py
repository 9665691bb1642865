"""The HTTP side of DTMS on the metrics port: ``/metrics``, ``/health`` and the web view.

:mod:`dtms.web.server` -- the Starlette app and its uvicorn server (auth, binding, shutdown);
:mod:`dtms.web.views` -- the pages, their JSON and the event stream; :mod:`dtms.web.chart` --
what a trade's chart shows (pure functions); ``static/`` -- the pages' HTML, JS and CSS.
"""
