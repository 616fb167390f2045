"""NeuroFlux (Saikumar and Varghese, EuroSys 2024): training a CNN under a memory budget with local learning.

layers.py cuts a model into a layer sequence and gives each layer an auxiliary head; memory.py counts what
training a layer or a block costs; plan.py cuts the layers into blocks under the budget, each with the largest
batch that fits; train.py trains block by block, caching each block's outputs on disk, and saves the best early
exit as an ordinary run.
"""
