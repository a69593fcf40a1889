"""The data plane scaled out (``up --proxies N``): N proxy processes on one port (SO_REUSEPORT),
one of them in the control plane's process, the others (``worker.py``) asking the control plane
for every request's instance through its private channel (``channel.py`` serves it,
``remote.py`` is the workers' Router over it), so holds, wakes and in-flight counts stay the
control loop's."""
