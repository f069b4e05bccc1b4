"""Prometheus metrics of the service: what each process counts, and where it is served.

Event counts live in the process that sees the event (bridge, gateway, flow runs through their
runner); state that several processes share (queues, flow runs, repositories) is read at
scrape time by the API's exporter. docs/metrics.md says which metric lives where and why.
"""
