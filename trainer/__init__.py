"""Pretrain phi-1.5 on textbookgen datasets."""
