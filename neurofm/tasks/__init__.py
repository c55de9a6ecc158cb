"""Lightning tasks: pretraining and fine-tuning objectives, optimisers and schedules."""
