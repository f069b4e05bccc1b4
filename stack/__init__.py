"""The local service stack: RabbitMQ, Ceph, OpenBao, registry, Prefect and stratum-0 HTTP.

stack.manager.Stack starts, stops and reports them; one module per component.
"""
