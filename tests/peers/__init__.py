"""Test peers on our own codec (lib60870's behaviour where c104 cannot show it): used by
tests and bench only, so not installed (the demo's simulators stay in concentrator/sim)."""
