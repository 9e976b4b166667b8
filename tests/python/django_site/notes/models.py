from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=100)
    worker_pid = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)
