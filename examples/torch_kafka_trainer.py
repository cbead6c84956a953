"""A torch online trainer publishing to Kafka: tracked tensors, per-sample gradients
(TorchCapture, factored from the step's own backward), a model version per epoch, the
rows' gradients at the final version (featurisation, which the default influence method
scores a prediction against) and a prediction, all through a BackgroundPublisher over
KafkaTransport (encoding, hashing and sending off the training thread).
`headwater process` consumes the topic into ClickHouse.

    headwater topics create --kafka-bootstrap localhost:9092   # once: producers never create it
    headwater process --kafka-bootstrap localhost:9092 --dsn chdb://./store &
    python examples/torch_kafka_trainer.py --bootstrap localhost:9092
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F  # noqa: N812

from headwater.producers import Publisher
from headwater.producers.capture.torch import TorchCapture
from headwater.producers.publisher import BackgroundPublisher
from headwater.producers.tracking import Tracker
from headwater.producers.tracking.sources import track_tensor as register_tensor
from headwater.producers.tracking.torch import row_keys, track_tensor, tracked_loader
from headwater.producers.transports.kafka import KafkaTransport


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("HEADWATER_KAFKA_BOOTSTRAP"),
                        help="Kafka bootstrap servers [env HEADWATER_KAFKA_BOOTSTRAP]")
    parser.add_argument("--topic", default=os.environ.get("HEADWATER_KAFKA_TOPIC",
                                                          "headwater.events"),
                        help="events topic [env HEADWATER_KAFKA_TOPIC; headwater.events]")
    parser.add_argument("--run-id", default="torch-kafka-example")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args(argv)
    if not args.bootstrap:
        parser.error("no Kafka broker: pass --bootstrap or set HEADWATER_KAFKA_BOOTSTRAP")

    torch.manual_seed(0)
    features = torch.randn(args.rows, 8)
    labels = (features[:, :2].sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Publisher(KafkaTransport(args.bootstrap, args.topic), run_id=args.run_id) as pub, \
            BackgroundPublisher(pub) as background:
        tracker = Tracker(background)
        # two registered sources, then tracked tensors on their rows
        x = track_tensor(tracker, register_tensor(tracker, features,
                                                  uri="memory://example/features"))
        y = track_tensor(tracker, register_tensor(tracker, labels,
                                                  uri="memory://example/labels"))
        capture = TorchCapture(background, model, "torch-example", k=128)
        capture.record_version(0)
        step = 0
        for epoch in range(args.epochs):
            for xb, yb in tracked_loader(tracker, torch.utils.data.TensorDataset(x, y),
                                         batch_size=32, shuffle=True, seed=epoch):
                plain_x, plain_y = xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor)
                opt.zero_grad()
                with capture.step(plain_x, plain_y, row_keys(xb), learning_rate=0.1, step=step):
                    F.cross_entropy(model(plain_x), plain_y).backward()
                opt.step()
                step += 1
            capture.record_version(step, config={"epoch": epoch})
        # the training rows' gradients at the version that predicts (FEATURISATION rows):
        # the default influence method scores a prediction against rows at its own version,
        # and the step gradients above were all taken at earlier versions
        capture.featurise((xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor),
                           row_keys(xb)) for xb, yb in tracked_loader(
            tracker, torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=False))
        capture.record_prediction(features[0], prediction_id="torch-example-p0")
    with torch.no_grad():
        accuracy = float((model(features).argmax(1) == labels).float().mean())
    print(f"published {step} gradient batches, {args.epochs + 1} model versions and one "
          f"prediction to {args.topic} @ {args.bootstrap}; training accuracy {accuracy:.3f}")
    return {"steps": step, "versions": args.epochs + 1, "accuracy": accuracy}


if __name__ == "__main__":
    main()
