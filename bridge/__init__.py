"""Events to flow runs: RabbitMQ messages (bucket notifications, registry events, repository
requests) and registry webhooks become Prefect flow runs, validated, coalesced and never lost.

Modules, one job each:
  s3_events          S3 notifications (RGW, AWS-style, SNS envelope) → ObjectEvent; key → path
  registry_events    distribution / Harbor webhooks → ImagePushed / ImageDeleted; UnpackFilter
  coalescer          per-repository batching and the batch idempotency key
  consumer           the pika consumer: routing, dead letters, delayed retries, reconnects
  topology           exchanges and queues (idempotent; shared with provisioning and the webhook)
  config             queue names, bindings, windows, retry policy, deployment names
  run_requests       the FlowStarter seam and the parameters of each flow
  flow_starter       run_deployment against Prefect, with error classification
  provision_requests repository requests authorized (JWT) before `provision` is started
  repositories / registry_lookup   bucket → repository + owner (seam, and the registry-backed one)
  publisher, webhook the registry webhook receiver and its confirmed publisher
  main, assembly     the process: signals, wiring; run by `./svc bridge` (service/cli.py)
  dead_letters       the dead-letter queue for operators: list with reasons, replay

Bus conventions (events exchange = settings.rabbitmq.events_exchange, topic):
  s3.<fqrn>            RGW bucket notifications (routing key = RGW topic name) → s3 queue
  registry.image-pushed / registry.image-deleted   from the webhook → registry queue
  repository.<anything> repository requests → repository-requests queue
Dead letters go to settings.rabbitmq.dead_letter_exchange → queue `cvmfs.dead-letter`, body
unchanged, headers x-cvmfs-reason, x-cvmfs-queue, x-cvmfs-routing-key, x-cvmfs-dead-lettered-at;
`cvmfs-svc dead-letters` lists them (and `--replay` moves them back onto the events exchange).
"""
