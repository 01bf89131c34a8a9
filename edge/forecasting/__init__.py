"""Forecasts for the plan: the ONNX models and the scenarios built from their fans.

:mod:`~picogrid.edge.forecasting.forecast` runs the trained ONNX models with onnxruntime (P10/P50/P90
per series, online recalibration); :mod:`~picogrid.edge.forecasting.scenarios` turns the fans into the
optimiser's inputs and quantile scenarios, :mod:`~picogrid.edge.forecasting.error_scenarios` adds
scenarios from the forecasts' own past errors and :mod:`~picogrid.edge.forecasting.energy_calibration`
holds the scenario energy calibration fitted offline.
"""
