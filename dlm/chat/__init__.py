"""Chat: the terminal REPL over a chat fine-tuned run (fine-tuning itself is dlm.train.finetune)."""
