"""Turning models from formats ml-api does not serve into ones it does, once, at
import time, with a numeric check against the original. The tools they need
(torch and friends) are an extra, ``mlapi[import]``, never in the production image."""
