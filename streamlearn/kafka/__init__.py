"""streamlearn.kafka"""
