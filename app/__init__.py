"""The review web app (Streamlit): a run's saliency maps, predictions and trust measures, behind a sign-in."""
