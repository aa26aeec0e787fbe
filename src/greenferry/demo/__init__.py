"""The live demo: three node daemons on an accelerated clock, fed real traces over MQTT, watched live.

``greenferry demo`` wires these together (see :func:`greenferry.demo.runner.run_demo`):

- :mod:`greenferry.demo.clock`: :class:`ScaledClock`, simulated time running ``speedup`` times real time;
- :mod:`greenferry.demo.replayer`: a built-in scenario's surplus, carbon and forecast traces published per
  site on MQTT, one scenario step at a time on that clock;
- :mod:`greenferry.demo.view`: the :class:`DemoState` model, a pure ``render(state)`` and the status
  collector that fills the state from the nodes' retained MQTT status;
- :mod:`greenferry.demo.runner`: the broker (embedded amqtt unless one is given), the three nodes, the
  replayer and the view, for one simulated day by default.
"""
