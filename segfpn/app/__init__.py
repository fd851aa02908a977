"""What the Gradio app (``app.py``, the UI) keeps and computes between its events, one job per
module; no gradio here.

* :mod:`segfpn.app.source`: where the model comes from (checkpoints tried in order, loaded once and
  shared, downloaded in the background, reloaded on request).
* :mod:`segfpn.app.models`: the model picker: what it lists, each session's choice, and at most
  two models kept in memory for all sessions.
* :mod:`segfpn.app.session`: one session's run (image, result, pyramid features) and the runs kept
  within a budget of bytes.
* :mod:`segfpn.app.views`: the views and their text, one function per tab.
* :mod:`segfpn.app.files`: the download files of a request.
"""
