"""`dlm serve`: an OpenAI-compatible HTTP server and a web page over trained runs (pip install 'dlm[serve]')."""
