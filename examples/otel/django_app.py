"""A one-file Django project traced by opentelemetry-instrument, spans kept by cometmp
(docs/INTEGRATIONS.md, "OpenTelemetry"). Django's instrumentation needs
DJANGO_SETTINGS_MODULE to name the settings (here: this module).

    DJANGO_SETTINGS_MODULE=django_app \
    OTEL_TRACES_EXPORTER=cometmp OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    OTEL_PYTHON_CONFIGURATOR=cometmp COMETMP_DIR=/tmp/otel-demo OTEL_SERVICE_NAME=django-demo \
      opentelemetry-instrument gunicorn -w 2 -b 127.0.0.1:8002 django_app:application
"""

from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path

DEBUG = False
SECRET_KEY = "example-only"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = __name__
MIDDLEWARE: list[str] = []
INSTALLED_APPS: list[str] = []


def hello(request):
    return HttpResponse("hello\n")


urlpatterns = [path("hello", hello)]
application = get_wsgi_application()
