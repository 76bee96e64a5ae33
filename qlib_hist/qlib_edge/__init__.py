"""The qlib edge: every module of qlib-hist that imports qlib lives here, and nothing outside it does.

- :mod:`.model`          ``HIST(qlib.model.base.Model)``: qlib's keyword arguments -> typed settings; fit / predict /
                         explain; pickling
- :mod:`.dataset`        a ``DatasetH`` segment -> :class:`~qlib_hist.batches.DailyBatches` (views of the handler)
- :mod:`.expressions`    member weights from a qlib expression (``D.features``)
- :mod:`.record`         ``HISTExplainRecord``, the qrun record that saves explanations
- :mod:`.recorders`      finding a run's recorder and its model; the metrics a workflow logged
- :mod:`.handler_cache`  an on-disk cache of a built handler
- :mod:`.demo`           the demo workflow through qrun's ``workflow``
"""
