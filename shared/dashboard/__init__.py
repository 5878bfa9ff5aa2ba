"""Read-only web dashboards (coordinator and site): widgets, the HTTP app, and its safety rules.

The pages are built in Python as a list of typed widgets (:mod:`shared.dashboard.widgets`), served as JSON
and drawn by one packaged script (``static/dashboard.js``) that writes every value as text, never as HTML.
Nothing is fetched from the internet: the script, the style sheet and the charts are in this package.
"""
